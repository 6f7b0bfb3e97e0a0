"""Hugging Face (PyTorch) files for PanGu-pi exports; copied into each export folder, so standalone."""
