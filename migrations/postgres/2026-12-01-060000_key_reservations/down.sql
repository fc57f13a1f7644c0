DROP TABLE target_key_reservations;
