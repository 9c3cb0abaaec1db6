"""A BERT encoder with mean pooling and a linear head: the classifier `slm classify train` saves.

Sentence embedders such as all-MiniLM-L6-v2 were trained with mean pooling, and fine-tune best with
it; transformers' own `BertForSequenceClassification` pools the [CLS] token instead. So the saved
model uses its own `model_type` and this file is copied into every model directory as
`modeling_slmforge.py` (an `auto_map` points to it): `AutoModelForSequenceClassification` loads it
with `trust_remote_code=True`, or without once `slmforge.clf.model` is imported (registered
below). The file imports only torch and transformers, so the saved directory stands alone.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    BertConfig,
    BertModel,
    BertPreTrainedModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput

MODEL_TYPE = "slmforge_bert_meanpool"


class MeanPoolBertConfig(BertConfig):
    model_type = MODEL_TYPE


class MeanPoolBertForSequenceClassification(BertPreTrainedModel):
    config_class = MeanPoolBertConfig

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        drop = getattr(config, "classifier_dropout", None)
        self.dropout = nn.Dropout(config.hidden_dropout_prob if drop is None else drop)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def embed(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        """Mean of the last hidden states over the real (unpadded) tokens."""
        hidden = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        logits = self.classifier(self.dropout(self.embed(input_ids, attention_mask, token_type_ids)))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


AutoConfig.register(MODEL_TYPE, MeanPoolBertConfig, exist_ok=True)
AutoModelForSequenceClassification.register(
    MeanPoolBertConfig, MeanPoolBertForSequenceClassification, exist_ok=True
)
