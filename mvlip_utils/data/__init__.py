"""The datasets: the generated offline ones, ImageFolders with CLIP's preprocessing, and the uint8 cache."""
