-- wschat history, schema version 4: the application's refs apart from the clients' (issue 20).
-- application: 1 for a message published through the server API. Its `ref` is looked up only
-- among such messages, so that a client using the same name and ref never pre-empts it. Rows
-- stored before are the clients' (0).
ALTER TABLE messages ADD COLUMN application INTEGER NOT NULL DEFAULT 0;
