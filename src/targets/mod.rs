//! Targets: the systems we provision into (LDAP directories, legacy SQL databases), behind one
//! trait. Targets never see SCIM types or the store; they read and apply mapping entries/deltas.
