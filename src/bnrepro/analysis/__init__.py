"""Tools the experiments' analyses share: the measures figure (measures_figure.py), wandb
figures (wandb_figures.py) and notebook display (notebook.py)."""
