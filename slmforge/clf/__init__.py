"""The encoder-classifier family (intent, sentiment, topic): configs, training, prediction, compression.

configs      ClassifyTrainConfig, CompressConfig (torch-free; the CLI's options)
examples     labelled examples: read .csv/.tsv/.jsonl, check labels, stratified splits
model        the mean-pooling encoder + linear head saved with every classifier (copied as modeling_slmforge.py)
io           build a classifier from a base encoder, save it, measure it
train        `slm classify train`: what to run and ship (baselines, few-shot or not, the calibrated `oos` threshold)
tuning       the torch side of it: step budgets, fine-tuning with early stopping, contrastive tuning
head         the logistic-regression head on embeddings (frozen encoder, static table), NumPy + scikit-learn
tfidf        `--arch tfidf`: a TF-IDF word + char n-gram logistic regression saved as JSON + safetensors
static       `--arch static`: a model2vec token table distilled from the encoder + a linear head (safetensors)
predict      `slm classify predict`: the one interface evaluation and serving use
evaluate     `slm eval --task classification` on classifiers: accuracy, macro-F1, per class, confusion plot
compress     `slm prune` / `slm distill` of classifiers: fewer layers, trimmed vocabulary, healed
"""
