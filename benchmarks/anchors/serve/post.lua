-- wrk script for serve_bench.py: POST the JSON body in $SERVE_BENCH_BODY to the URL wrk is given.
local f = assert(io.open(os.getenv("SERVE_BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
