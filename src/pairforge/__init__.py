"""pairforge: automatic preference pairs from models of different strength, contrastive post-training
(DPO, SLiC-HF and relatives) on an easy-to-hard curriculum, and pairwise evaluation (arXiv 2310.02263)."""

__version__ = "0.1.0"
