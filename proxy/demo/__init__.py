"""`spendgate demo`: a simulated software factory driven through a running spendgate with the openai SDK
(`driver`), and `--backfill`, which writes the same factory's history straight into the store (`backfill`)."""
