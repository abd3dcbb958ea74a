DROP TABLE contacts;
DROP TYPE link_precedence;
