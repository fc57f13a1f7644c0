//! The HTTP shell: the SCIM listener and the admin listener (metrics, health). Never calls a
//! target: a push is answered once it is durable in the store.
