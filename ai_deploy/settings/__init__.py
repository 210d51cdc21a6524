"""The deploy's settings as one schema (read from group_data/all.py, the one place their
defaults and comments live), checked before any host is touched: in group_data files, in
`--data`, and in the app's settings file (ai-deploy.toml); and assembled for each host at one
point (layers.py), with the names derived from app_name (derive.py), file paths made absolute
(localpaths.py) and the SSH settings and variables (ssh.py)."""
