"""Celery settings of the GPU workers (a plain module of Celery setting names).

Reliability choices: late acks + reject on worker loss (a killed worker's
message is delivered again), prefetch 1 (a worker never hoards messages while
busy), JSON only, no result backend (job state lives in the database), the
Redis visibility timeout above the hard time limit (a long task is not
re-delivered while it still runs). Poison messages are dead-lettered
instead of crashing the consumer (:mod:`workers.messages`).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from labelfleet.settings import Settings

_settings = Settings()

broker_url = _settings.broker_url.get_secret_value()
task_serializer = "json"
accept_content = ["json"]
result_backend = None
task_ignore_result = True
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_soft_time_limit = _settings.task_soft_time_limit
task_time_limit = _settings.task_hard_time_limit
broker_transport_options = {"visibility_timeout": _settings.task_hard_time_limit + 600}
broker_connection_retry_on_startup = True
if urlsplit(broker_url).scheme in ("redis", "rediss"):  # checks envelopes before kombu decodes them
    broker_transport = "workers.messages:SafeRedisTransport"
worker_consumer = "workers.messages:SafeConsumer"  # checks protocol, body and kwargs before Celery does
broker_connection_max_retries = None  # keep reconnecting through a broker restart
worker_send_task_events = True  # Flower
task_send_sent_event = True
worker_hijack_root_logger = False
