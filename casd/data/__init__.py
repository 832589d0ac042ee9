"""Data: the raw and prepared layouts and their readers, the synthetic set, the prepare stages, pose maps, the pair dataset."""
