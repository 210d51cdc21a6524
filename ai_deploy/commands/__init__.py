"""The user commands of `ai-deploy`, one per module, each returning an exit code."""
