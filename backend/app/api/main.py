from fastapi import APIRouter, Depends

from app.api.deps import get_current_user
from app.api.routes import auth, items, login, private, users, utils
from app.core.config import settings

# Secure by default: each module's `router` is included behind the current-user
# dependency; only what a module puts on its `public_router` is open.
authenticated = [Depends(get_current_user)]

api_router = APIRouter()
api_router.include_router(login.public_router)
api_router.include_router(login.router, dependencies=authenticated)
api_router.include_router(users.public_router)
api_router.include_router(users.router, dependencies=authenticated)
api_router.include_router(utils.public_router)
api_router.include_router(utils.router, dependencies=authenticated)
api_router.include_router(items.router, dependencies=authenticated)
if settings.supabase_enabled:
    api_router.include_router(auth.public_router)
    api_router.include_router(auth.router, dependencies=authenticated)
if settings.ENVIRONMENT == "local":
    api_router.include_router(private.public_router)
