"""Beyond one machine, on Ray (`pip install -e '.[ray]'` in the clone): simulation points as Ray tasks (`tasks.py`) and
engine replicas as a Ray Serve deployment behind agentkv's router (`serve.py`). Nothing else imports Ray."""
