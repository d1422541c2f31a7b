"""The privacy service: a shopper erased on request (``DELETE /analytics/users/{userId}``), and
the retention job."""
