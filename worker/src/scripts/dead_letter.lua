-- Moves an entry to the dead letters: acknowledges the entry and adds the
-- dead letter in one step, so that it is neither lost nor left pending
-- once dead-lettered, and forgets its count of attempts. An entry that is
-- no longer pending was acknowledged or dead-lettered already (a consumer
-- reclaimed it while this call waited): nothing is added, so an entry is
-- dead-lettered once.
--
-- One script rather than MULTI / EXEC: on a Redis Cluster whose slot is
-- migrating, a script with some of its keys moved is answered TRYAGAIN and
-- one with all of them moved ASK, which the client retries or follows,
-- where a transaction is aborted.
--
-- KEYS[1]: the dead-letter stream. KEYS[2]: the stream. KEYS[3]: the hash
-- of attempts.
-- ARGV[1]: the dead-letter stream's approximate cap (XADD MAXLEN ~).
-- ARGV[2]: the consumer group. ARGV[3]: the entry's id.
-- ARGV[4..]: the dead letter's fields and values.
--
-- Returns 1 if the entry was dead-lettered, 0 if it was no longer pending.
redis.call('HDEL', KEYS[3], ARGV[3])
if redis.call('XACK', KEYS[2], ARGV[2], ARGV[3]) == 0 then
  return 0
end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 4))
return 1
