"""Prices, token counts and money: everything needed to turn a call into nano-USD. Depends on nothing of ours."""
