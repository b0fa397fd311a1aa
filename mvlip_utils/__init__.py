"""mvlip_utils: the helper package behind the MVLIP study.

One module per stage: profiles (settings), data, ssm (selective scan; its Triton kernels in
ssm_triton), towers (image encoders), weights (reading weight files and checkpoints without running code
from them), model (CLIP assembly), train, evaluate, benchmark, results, study (papermill runner and book
build).
"""

__version__ = "0.1.0"
