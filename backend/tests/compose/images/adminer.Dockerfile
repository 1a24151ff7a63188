# Stands in for adminer:4: Debian's Adminer 4.8.1 with PHP's pgsql driver, `php -S` on 8080 as user adminer.
FROM standin/bookworm:base
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        adminer php-cli php-pgsql \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/www/html \
    && printf '<?php include "/etc/adminer/conf.php";\n' >/var/www/html/index.php \
    && useradd --system --no-create-home adminer
WORKDIR /var/www/html
USER adminer
EXPOSE 8080
STOPSIGNAL SIGINT
CMD ["php", "-S", "0.0.0.0:8080", "-t", "/var/www/html"]
