"""How a run is told: what it prints and the job summary (output, progress), notifications
(notify, notify_payloads), and secret masking (secrets, secretlike)."""
