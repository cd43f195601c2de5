"""The ``text2text-generation`` task: an encoder–decoder that rewrites a source text into a target text."""
