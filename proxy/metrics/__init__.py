"""Factory metrics: lifecycle events, rollups at ingest, and the read models of the metrics, cost-per-issue,
cost-optimisation and AI-cost APIs (all scoped to one org, or every org for an org-"*" admin)."""
