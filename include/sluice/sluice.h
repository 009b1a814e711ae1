// Everything a user of sluice::core needs (the Redis stores: sluice/redis_store.h and
// sluice/redis_cluster_store.h, from sluice::redis).
#pragma once

#include "sluice/algorithms.h"
#include "sluice/clock.h"
#include "sluice/decision.h"
#include "sluice/error.h"
#include "sluice/limit.h"
#include "sluice/limiter.h"
#include "sluice/memory_store.h"
#include "sluice/open_store.h"
#include "sluice/store.h"
