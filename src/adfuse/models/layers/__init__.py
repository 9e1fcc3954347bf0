"""Building blocks shared by several papers (cross-attention, FNet, MoE, Q-former...)."""
