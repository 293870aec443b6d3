"""Tiny random checkpoints of every teacher family, each with a tokenizer of its own kind, built offline.

Each tokenizer is the family's own tokenizer class (WordPiece for BERT/ELECTRA/DistilBERT/MPNet, byte-level
BPE for RoBERTa and ModernBERT, Unigram for XLM-R/CamemBERT/DeBERTa-v3) over a vocabulary of a few hundred
pieces, so it splits every English word (letters at worst) and emits segment ids only where the real one
does. Each model is the family's pretrained-backbone class (no task head), hidden 32, ``layers`` layers,
its config's special token ids and vocabulary size taken from the tokenizer.
"""

from __future__ import annotations

import string
from pathlib import Path

#: every family a teacher may be (dist_peakd.models.families.TEACHER_TYPES), in the order tests list them
FAMILIES = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "deberta-v2", "modernbert", "mpnet", "distilbert")
WORDS = ("the of and to a in that is was he for it with as his on be at by i this had not are but from or have an "
         "they which one you were her all she there would their we him been has when who will more no if out so "
         "said what up its about into than them can only other new some could time these two may then do first "
         "any my now such like our over man me even most made after also did many before must through back years "
         "where much your way well down should because each just those people how too little state good very make "
         "world still own see men work long get here between both life being under never day same another know "
         "while last might us great old year off come since against go came right used take three company percent "
         "million billion share shares market").split()


def _wordpiece_vocab(specials: list[str]) -> dict[str, int]:
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    pieces = specials + chars + [f"##{c}" for c in chars] + [w for w in WORDS if w not in chars]
    return {p: i for i, p in enumerate(dict.fromkeys(pieces))}


def _unigram_vocab(specials: list[str]) -> list[tuple[str, float]]:
    chars = list(string.ascii_letters + string.digits + string.punctuation)
    pieces = [(s, 0.0) for s in specials] + [("\u2581", -2.0)]
    pieces += [(f"\u2581{w}", -3.0) for w in WORDS] + [(f"\u2581{c}", -6.0) for c in chars] + [(c, -8.0) for c in chars]
    return list({p: (p, s) for p, s in pieces}.values())


def _bytelevel_vocab(specials: list[str]) -> tuple[dict[str, int], list]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    pieces = specials + list(bytes_to_unicode().values())
    return {p: i for i, p in enumerate(dict.fromkeys(pieces))}, []


def family_tokenizer(family: str):
    """The family's own tokenizer class over a tiny vocabulary."""
    import transformers as T

    bert_specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    if family in ("bert", "electra", "distilbert"):
        cls = {"bert": T.BertTokenizer, "electra": T.ElectraTokenizer, "distilbert": T.DistilBertTokenizer}[family]
        return cls(vocab=_wordpiece_vocab(bert_specials))
    if family == "mpnet":
        return T.MPNetTokenizer(vocab=_wordpiece_vocab(["<s>", "<pad>", "</s>", "[UNK]", "<mask>"]))
    if family == "roberta":
        vocab, merges = _bytelevel_vocab(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        return T.RobertaTokenizer(vocab=vocab, merges=merges)
    if family in ("xlm-roberta", "camembert"):
        cls = T.XLMRobertaTokenizer if family == "xlm-roberta" else T.CamembertTokenizer
        return cls(vocab=_unigram_vocab(["<s>", "<pad>", "</s>", "<unk>", "<mask>"]))
    if family == "deberta-v2":
        return T.DebertaV2Tokenizer(vocab=_unigram_vocab(bert_specials), unk_id=1)
    if family == "modernbert":
        return _modernbert_tokenizer(bert_specials)
    raise ValueError(family)


def _modernbert_tokenizer(specials: list[str]):
    """ModernBERT ships a byte-level BPE ``PreTrainedTokenizerFast`` with [CLS]/[SEP] and no segment ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab, merges = _bytelevel_vocab(specials)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_input_names=["input_ids",
                                                                                            "attention_mask"])


def family_config(family: str, tok, layers: int = 2, hidden: int = 32):
    """The family's config sized for ``tok`` (vocabulary, special ids), as its real checkpoints set it up."""
    import transformers as T

    ids = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id)
    common = dict(ids, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=48,
                  max_position_embeddings=130)
    if family == "distilbert":
        return T.DistilBertConfig(**ids, dim=hidden, n_layers=layers, n_heads=2, hidden_dim=48,
                                  max_position_embeddings=128)
    if family == "modernbert":
        return T.ModernBertConfig(**common, cls_token_id=tok.cls_token_id, sep_token_id=tok.sep_token_id,
                                  bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
                                  global_attn_every_n_layers=2, local_attention=16)
    if family == "deberta-v2":  # DeBERTa-v3's layout: relative attention, shared Q/K, no segment embedding
        return T.DebertaV2Config(**common, relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=16,
                                 norm_rel_ebd="layer_norm", share_att_key=True, type_vocab_size=0,
                                 position_biased_input=False)
    if family in ("roberta", "xlm-roberta", "camembert"):  # one segment type, positions offset by the pad id
        cls = {"roberta": T.RobertaConfig, "xlm-roberta": T.XLMRobertaConfig, "camembert": T.CamembertConfig}[family]
        return cls(**common, type_vocab_size=1, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
    cls = {"bert": T.BertConfig, "electra": T.ElectraConfig, "mpnet": T.MPNetConfig}[family]
    extra = {"embedding_size": 16} if family == "electra" else {}
    return cls(**common, **extra)


def make_family_backbone(family: str, folder: Path, layers: int = 2, seed: int = 0) -> Path:
    """Save a tiny random pretrained backbone of ``family`` (the base model, no head) with its tokenizer."""
    import torch
    from transformers import AutoModel

    tok = family_tokenizer(family)
    torch.manual_seed(seed)
    AutoModel.from_config(family_config(family, tok, layers)).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder
