"""Generation: trie-constrained, steerable beam search over semantic IDs (`e2erec.generate.beam`), its settings
(`e2erec.generate.config`), and the end-to-end model as an evaluated system (`e2erec.generate.system`)."""
