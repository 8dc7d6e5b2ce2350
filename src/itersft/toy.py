"""`itersft.toy` is `itersft.demo.toy`: tiny offline models and tokenizer, kept here for existing imports."""

from itersft.demo.toy import CHAT_TEMPLATE, build_causal_lm, build_seq2seq_lm, build_tokenizer, save_toy

__all__ = ["CHAT_TEMPLATE", "build_causal_lm", "build_seq2seq_lm", "build_tokenizer", "save_toy"]
