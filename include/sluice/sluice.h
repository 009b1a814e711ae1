// Everything a user of the sluice library needs.
#pragma once

#include "sluice/algorithms.h"
#include "sluice/clock.h"
#include "sluice/decision.h"
#include "sluice/error.h"
#include "sluice/limit.h"
#include "sluice/limiter.h"
#include "sluice/memory_store.h"
#include "sluice/open_store.h"
#include "sluice/redis_store.h"
#include "sluice/store.h"
