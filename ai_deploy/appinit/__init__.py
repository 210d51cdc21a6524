"""`ai-deploy init`: what an app repository keeps (its settings, its workflow) and the one-time
GCP and GitHub set-up, printed with the names filled in."""
