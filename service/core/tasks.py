"""Names of the Celery tasks and the reply protocol both sides agree on.

The API sends tasks by name (it never imports the worker). Fits run on the fit queue and
report through the job store. Predictions and on-demand summaries are synchronous calls on
the interactive queue: the worker pushes one JSON reply to ``JobStore.reply_key(token)``,
either ``{"ok": <body>}`` or ``{"error": {"status": <int>, "detail": ..., "errors": [...]}}``.
"""

FIT = "hbm.fit"
PREDICT = "hbm.predict"
RESULTS = "hbm.results"
DESCRIBE = "hbm.describe"

#: How long a reply waits in Redis for the API to collect it.
REPLY_TTL_S = 300
