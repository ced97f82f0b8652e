# RL post-training (paper.md section 3): GRPO / Unlikeliness / RepExp -> best checkpoint -> pass@k.
