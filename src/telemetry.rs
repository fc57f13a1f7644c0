//! Logging and metrics: the subscriber (human or JSON), the shared log field names and the metric
//! names.
