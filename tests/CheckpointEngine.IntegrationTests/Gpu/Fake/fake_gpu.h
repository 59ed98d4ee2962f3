// What the two stand-ins share: a stream counts the operations queued on it and those finished, so an
// event recorded after an NCCL call stays "not ready" until the call's thread is done.
#pragma once
#include <stdint.h>

struct fake_stream { int64_t submitted, completed; };
