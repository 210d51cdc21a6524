"""`ai-deploy deploy`, one engine for every target kind: its phases (flow), the rollout step
(fleet), the run's context and options, the settings probe; how it reaches hosts is in
ai_deploy.ci.connect. How a run is told is ai_deploy.report; the rollout itself, its exit
codes and outside health are ai_deploy.rollout."""
