"""The study's settings: every parameter with its default and help, the profiles, parameters into configs, precision, the notebooks' names."""
