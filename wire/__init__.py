"""The layer both sides import: the task format (:mod:`.messages`), named arrays as Arrow IPC
(:mod:`.arrays`) and the arithmetic of secure aggregation's masks (:mod:`.masking`)."""
