"""ai-deploy: the wrapper around pyinfra that deploys the AI server."""
