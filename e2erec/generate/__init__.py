"""Generation: trie-constrained, steerable beam search over semantic IDs (`e2erec.generate.beam`)."""

from e2erec.generate.beam import BeamState, ItemInfo, constrained_beam_search

__all__ = ["BeamState", "ItemInfo", "constrained_beam_search"]
