"""Connectors: turn outside sources (files and S3 prefixes, Kafka, CDC, webhooks) into document events."""
