"""Everything that flows through Kafka: schemas, topics, producers and the Faust worker."""
