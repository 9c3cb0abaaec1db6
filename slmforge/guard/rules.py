"""The guard's rules: regular expressions for classic prompt-injection and jailbreak phrasings (`RULES`),
matched on every copy of a text from `rule_variants` (`rule_hits`)."""

from __future__ import annotations

import re

from slmforge.guard.normalise import rule_variants

# Attack phrasings, matched case-insensitively on every copy from rule_variants(). Each is written for
# precision: a customer who says "ignore the previous transaction" or "what is a system prompt?" is not
# an attacker. The multilingual ones are written accent-free (they match the folded copy).
_W = r"[^.\n]{0,40}?"  # a few words on the same sentence
_OBJ = (
    r"(instructions?|prompts?|rules|directions|guidelines|directives|polic(y|ies)|restrictions|safeguards|"
    r"filters|guardrails|constraints|programming|orders|commands|system message|context)"
)
_VERBS_ML = (  # imperative "ignore / forget / disregard" in de fr nl es it pt pl ru tr sv cs
    r"ignoriere|ignorier|ignorieren sie|vergiss|vergessen sie|missachte|ubergehe|setze dich uber|"
    r"ignore|ignorez|oublie|oubliez|ne tiens pas compte|ne tenez pas compte|fais abstraction|passe outre|"
    r"negeer|vergeet|houd je niet aan|trek je niets aan van|"
    r"ignora|ignore|ignorad|olvida|olvide|olvidad|olvidate|haz caso omiso|no sigas|"
    r"ignorate|dimentica|dimenticate|trascura|non seguire|non rispettare|"
    r"esqueca|esquece|desconsidere|desconsidera|nao siga|deixe de lado|"
    r"zignoruj|ignoruj|zapomnij|pomin|nie stosuj sie|nie przestrzegaj|"
    r"игнорируи|проигнорируи|забудь|забудьте|не следуи|не обращаи внимания на|"
    r"yok say|yoksay|unut|unutun|gormezden gel|"
    r"glom|strunta i|zapomen|ignoruj"
)
_NOUNS_ML = (
    r"anweisung|anweisungen|instruktionen|regeln|vorgaben|befehle|richtlinien|systemanweisung\w*|"
    r"vorschriften|einschrankungen|consignes?|instructions?|regles|directives?|restrictions|"
    r"instructies|aanwijzingen|regels|opdrachten|richtlijnen|beperkingen|"
    r"instrucciones|reglas|indicaciones|directrices|restricciones|normas|"
    r"istruzioni|regole|indicazioni|direttive|restrizioni|"
    r"instrucoes|regras|diretrizes|orientacoes|restricoes|"
    r"instrukcj\w*|polecen\w*|zasad\w*|regu[lł]\w*|ogranicze\w*|"
    r"инструкци\w*|правил\w*|указани\w*|ограничени\w*|"
    r"talimat\w*|kural\w*|yonerge\w*|"
    r"instruktioner|regler|instrukce|pokyny|pravidla"
)
_LEAK_ML = (  # "system prompt" / "hidden instructions" in the same languages
    r"system\s?prompt\w*|systemanweisung\w*|versteckten? anweisungen|prompt (du |de |del |di |do )?s[iy]ste[mn]\w*|"
    r"instructions (cachees|secretes|initiales|du systeme)|consignes (cachees|secretes|initiales|du systeme)|"
    r"systeeminstructies|systeembericht|verborgen instructies|"
    r"instrucciones (ocultas|del sistema|iniciales|originales|secretas)|"
    r"istruzioni (nascoste|segrete|iniziali|di sistema|originali)|"
    r"instrucoes (ocultas|secretas|iniciais|do sistema|originais)|"
    r"instrukcje systemowe|ukryte instrukcje|prompt systemowy|systemowy prompt|"
    r"системн\w* (промпт|инструкци\w*|подсказк\w*|сообщени\w*)|скрыт\w* инструкци\w*|"
    r"sistem (istemi|talimat\w*|mesaj\w*)|gizli talimat\w*"
)
_SHOW_ML = (
    r"zeige|zeig|gib|nenne|verrate|wiederhole|drucke|schreib|affiche|montre|revele|repete|donne|ecris|"
    r"toon|geef|herhaal|laat|muestra|revela|repite|dime|imprime|escribe|mostra|rivela|ripeti|dimmi|stampa|"
    r"scrivi|mostre|repita|diga|escreva|pokaz|ujawnij|powtorz|wypisz|podaj|napisz|покажи|выведи|повтори|"
    r"раскрои|напиши|goster|yazdir|tekrarla|yaz|soyle"
)
RULES = {
    "ignore_instructions": re.compile(
        rf"\b(ignore|disregard|forget|override|bypass|skip|drop|discard|abandon|neglect|set aside|"
        rf"throw away|put aside)\b{_W}\b(previous|prior|above|earlier|preceding|all|your|the|any|system|"
        rf"safety|original|initial|existing|old|current|every)\b{_W}\b{_OBJ}\b",
        re.I,
    ),
    "stop_following": re.compile(
        rf"\b(stop|cease|quit|no longer)\s+(following|obeying|observing|applying|respecting)\b{_W}\b"
        rf"(instructions|rules|system prompt|guidelines|programming|polic(y|ies)|restrictions)\b",
        re.I,
    ),
    "new_instructions": re.compile(
        r"\b(your|the)\s+(new|only|real|actual|true|updated)\s+(instructions?|task|job|goal|orders|"
        r"directives?|mission|purpose)\s+(is|are|now)\b|\bnew\s+(instructions?|tasks?|directives?|orders?|"
        r"polic(y|ies)|rules?|system (message|prompt))\s*:|\b(highest|top|absolute|maximum) priority\b"
        r"[^.\n]{0,40}\b(overrides?|supersedes?|replaces?|above all)\b|\b(overrides?|supersedes?)\s+"
        r"(all|any|every)\s+(other|previous|prior|earlier)\b",
        re.I,
    ),
    "prompt_leak": re.compile(
        rf"\b(reveal|print|show|repeat|output|echo|display|tell me|give me|dump|leak|disclose|recite|"
        rf"spell out|paste|copy|write out|list)\b{_W}\b(system\s+(prompt|message|instructions)|"
        rf"(initial|original|hidden|secret|confidential|internal|full|entire|underlying)\s+(prompt|"
        rf"instructions|rules|configuration|system message))|\b(what is|what's|what are|what were)\s+your\s+"
        rf"(system\s+(prompt|message)|(initial|original|hidden|secret)\s+(prompt|instructions))|"
        rf"\beverything\s+(written|said|that (came|was written|was said))\s+(above|before)\s+(my|this)\b",
        re.I,
    ),
    "repeat_above": re.compile(
        r"\b(repeat|print|output|echo|copy|recite)\b[^.\n]{0,20}\b(text|everything|words|instructions|content"
        r"|messages?)\s+(above|before|preceding)\b[^\n]{0,40}\b(verbatim|word for word|starting with|"
        r"begin(ning)? with|exactly as|in full|including)\b",
        re.I,
    ),
    "persona_jailbreak": re.compile(
        r"\bdo anything now\b|\b(enable|activate|enter|switch to|turn on|in|into|now in)\s+(the\s+)?"
        r"(developer|debug|god|jailbreak|unrestricted|dan)\s+mode\b|\b(developer|debug|god|jailbreak|dan)\s+"
        r"mode\s+(is\s+)?(on|enabled|activated)\b|\b(you are|you're|you have been|i have)\s+(now\s+)?"
        r"jailbr(oken|eaked)\b|\bjailbreak (yourself|the (ai|model|assistant|bot))\b|\b(with|has|have)\s+(no|zero)\s+(content\s+)?(restrictions|filters|polic(y|ies)"
        r"|ethical guidelines|morals|ethics|rules|limits|censorship)\b|\bwithout any (content\s+)?"
        r"(restrictions|filters|polic(y|ies)|rules|limits|censorship)\b|\b(amoral|unfiltered|uncensored|"
        r"unrestricted|unaligned|unchained)\s+(ai|assistant|model|chatbot|bot|version|persona|mode)\b|"
        r"\b(free|freed|broken free)\s+(of|from)\s+(all\s+|your\s+|the\s+|its\s+)?(usual\s+)?(rules|"
        r"restrictions|guidelines|filters|programming)\b",
        re.I,
    ),
    "dan": re.compile(r"\b(DAN|STAN)\b"),  # the classic persona names, upper case only
    "chat_markup": re.compile(
        r"<\|(im_start|im_end|system|user|assistant|endoftext|eot_id|start_header_id|end_header_id)\|>|"
        r"\[/?INST\]|<</?SYS>>|</?(system|assistant|user)>|<(start|end)_of_turn>|"
        r"^\s*#{2,}\s*(system|instruction|assistant)\s*:|\bnew system (message|prompt)\b|"
        r"\bend of (user )?(input|prompt|message)\b[^\n]{0,40}\b(system|instruction)",
        re.I | re.M,
    ),
    "fake_turn": re.compile(
        r"(?:^|[\n>\]\"'`]|\s{2})\s*\[?(system|developer|admin|administrator|assistant|operator)\]?\s*"
        r"(message|prompt|note|override|instruction|update)?\s*:[^\n]{0,100}?\b(ignore|disregard|override|"
        r"overridden|no (restrictions|rules|filters|limits)|unrestricted|reveal|disabled|jailbreak|"
        r"developer mode|comply with (any|every|all)|safety (filters|rules|checks) (are )?(off|disabled)|"
        r"i will now|new (instructions|rules|policy))",
        re.I | re.M,
    ),
    "indirect_address": re.compile(
        r"\b(note|message|attention|instructions?|memo|important|reminder)\s*(to|for)\s+(the\s+|any\s+|all\s+)?"
        r"(ai|a\.i\.|llm|language model|chatbot|ai assistant|bot|model|assistant)s?\b(?! manager)|"
        r"\b(ai|llm|assistant|model|chatbot|bot|language model)s?\s+(reading|processing|summari[sz]ing|"
        r"translating|parsing|handling|analy[sz]ing)\s+(this|these|the following)\b|"
        r"\b(do not|don't|dont|never)\s+(translate|summari[sz]e|classify|extract)\b[^.\n]{0,40}\binstead\b|"
        r"\binstead of (translating|summari[sz]ing|classifying|extracting)\b[^.\n]{0,30}\b(you|please|now)\b",
        re.I,
    ),
    "authority_override": re.compile(
        r"\b(system|admin|administrator|root|developer|security)\s+(override|access granted|privileges granted)\b|"
        r"\b(safety|security|content)\s+(filters?|checks?|guardrails?|polic(y|ies)|restrictions)\s+(are|is|"
        r"have been|has been)\s+(now\s+)?(disabled|off|switched off|turned off|removed|lifted|suspended|"
        r"deactivated)\b|\bgranting you permission to\b[^.\n]{0,30}\b(ignore|bypass|drop|break|disable)\b",
        re.I,
    ),
    "refusal_suppression": re.compile(
        r"\b(never|do not|don't|you can't|you cannot|you must not|you may not)\s+(refuse|say no|decline)\b|"
        r"\bwithout (any )?(refusals?|refusing)\b|\bstart your (reply|answer|response) with ['\"]?"
        r"(sure|absolutely|of course)\b",
        re.I,
    ),
    "encoded_instructions": re.compile(
        r"\b(decode|decipher|decrypt|unscramble|rot13|rot-13|base64|reverse)\b[^.\n]{0,60}\b(and|then)\s+"
        r"(do|follow|execute|obey|carry out|run|act on|comply with|perform)\b|\b(follow|execute|obey|carry out)"
        r"\s+(the\s+)?(decoded|hidden|encoded|embedded)\s+(instructions?|text|message|commands?)\b",
        re.I,
    ),
    "foreign_ignore": re.compile(rf"\b({_VERBS_ML})\b.{{0,60}}?\b({_NOUNS_ML})\b", re.I),
    "foreign_leak": re.compile(rf"\b({_SHOW_ML})\b.{{0,60}}?\b({_LEAK_ML})\b", re.I),
}
# the English "forget everything you were told", "your new task is" and "an AI without restrictions",
# in the same languages (written accent-free, matched on the folded copy)
RULES["forget_everything"] = re.compile(
    r"\b(forget|disregard|ignore)\s+everything\s+(you were|you've been|you have been|that was|i|we)\b[^.\n]{0,20}"
    r"\b(told|said|given|wrote|instructed)\b|\bvergiss alles,? (was|wa)\b|\boublie(z)? tout ce qu|"
    r"\bvergeet alles,? wat\b|\bolvida(te)? (de )?todo lo que\b|\bdimentica(te)? tutto (quello|cio) che\b|"
    r"\besquec[ea] tudo o que\b|\bzapomnij (o )?wszystk\w*,? (co|czego)\b|\bзабудь вс[её],? что\b|"
    r"\bher seyi unut\b|\b(sana|daha once) soylenen her seyi unut",
    re.I,
)
RULES["foreign_new_task"] = re.compile(
    r"\b(deine|ihre) neue(n)? (aufgabe|anweisung|mission|rolle)\b|\b(ta|votre) nouvelle (tache|mission|consigne)\b|"
    r"\b(je|uw) nieuwe (taak|opdracht|instructie|missie)\b|\b(tu|su) nueva (tarea|mision|orden|mision)\b|"
    r"\bil (tuo|suo) nuovo (compito|incarico)\b|\ba (tua|sua) nova (tarefa|missao)\b|\btwoje nowe (zadanie|polecenie)\b|"
    r"\bтвоя новая (задача|миссия)\b|\byeni gorevin\b|\b(neue anweisung|nouvelle consigne|nieuwe opdracht|"
    r"nueva orden|nuovo ordine|nova ordem|nowe polecenie|новое указание|yeni talimat)\b[^.\n]{0,30}:",
    re.I,
)
RULES["foreign_persona"] = re.compile(
    r"\b(ki|ia|ai|ии|assistent|asistente|assistente|bot|chatbot|modell?|modelo|asystent)\b[^.\n]{0,10}\b(ohne|sans|"
    r"zonder|sin|senza|sem|bez|без)\b\s+(jede\w*\s+|aucune\s+|enige\s+|ninguna\s+|alcuna\s+|qualquer\s+|"
    r"zadnych\s+|каких-либо\s+|любых\s+)?(filter|einschrankung\w*|regeln|grenzen|restrictions?|filtres?|limites?|"
    r"regles|beperking\w*|regels|restricci\w*|filtros?|normas|restrizion\w*|regole|limiti|restric\w*|regras|"
    r"ogranicze\w*|filtr\w*|zasad|ограничени\w*|фильтр\w*|правил)\b|\b(kisitlamasi olmayan|filtresiz|kuralsiz) "
    r"(bir )?(yapay zeka|asistan|bot)",
    re.I,
)
LINE_RULES = ("chat_markup", "fake_turn")  # anchored at line starts: also matched on the text as written


def rule_hits(text: str) -> list[str]:
    """Names of the RULES that match any of rule_variants(text) (or, for LINE_RULES, the text as written)."""
    variants = rule_variants(text)
    hits = []
    for name, pattern in RULES.items():
        if any(pattern.search(v) for v in variants) or (name in LINE_RULES and pattern.search(text)):
            hits.append(name)
    return hits
