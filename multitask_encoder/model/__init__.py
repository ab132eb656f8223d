"""What a loaded model runs: the files `save_pretrained` copies next to the weights as remote code.

They import only torch, transformers and each other (single-dot sibling imports: transformers copies them
flat); tests/test_layout.py keeps it so.
"""
