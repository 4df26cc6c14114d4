"""The proof: every exactness check and the one stage executor."""
