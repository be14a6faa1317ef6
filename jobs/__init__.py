"""Work that runs over a federation as a whole: batch GWAS jobs (:mod:`better.jobs.gwas`), the files and
report they write (:mod:`better.jobs.report`) and ``better demo`` (:mod:`better.jobs.demo`). Above the
coordinator (:mod:`better.query`), which never imports them."""
