-- A customer is its contacts: the `identities` rows that carry its id (one per email address,
-- phone number, chat user). What a customer told us about themselves (name, tier, language) is
-- kept with each case, in `cases.data`, as it was when they complained.
--
-- The `customers` table held a name and two times that nothing read, and its key (a hash of the
-- first contact) put every new customer on a random index page: a quarter of the pages each new
-- case wrote, and 10-14% of intake throughput on both backends. Its rows are dropped with it; the
-- same names are in the cases.
DROP TABLE customers;
