"""Token strings as they read inside a text: see ``attribution.model.token_strings``
(the model wrapper's ``to_str_tokens`` uses the same rule, so graphs, figures and
dashboards agree)."""

from attribution.model.token_strings import reference_id, token_strings, vocab_strings

__all__ = ["reference_id", "token_strings", "vocab_strings"]
