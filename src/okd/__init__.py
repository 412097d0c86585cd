"""okd: online knowledge distillation for PyTorch.

Train a cohort of peer networks that teach each other (DML, CL-ILR, ONE, OKDDip, MCL-OKD)
with one generic engine over every backbone of the MCL-OKD paper.
"""

__version__ = "0.1.0"
