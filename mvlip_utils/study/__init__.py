"""The study: the papermill runner, when a notebook is reused, and the book."""
