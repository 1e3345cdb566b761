"""What csbot sends unasked: scheduled jobs, alert routing, digests, renewal prompts, NPS surveys and the
outbox worker."""
