-- PostgreSQL cannot drop one value of an enum; `erased` stays, unused.
DROP TABLE erasure_key;
DROP TABLE erasures;
