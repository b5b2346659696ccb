"""The study: greedy pretraining of stacks, fine-tuning cells, the comparison of arms over
seeds and label sizes, the recipe sweep and the paper's filter experiment. Each writes its
records into a workdir and leaves tables and figures to :mod:`scae.report`.
"""
